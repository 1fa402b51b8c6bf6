//! Ids of jobs and stored files that nobody can guess.

use std::time::{SystemTime, UNIX_EPOCH};

/// A new id for a job or a stored file, as the 12 bytes of a MongoDB ObjectId: four bytes of
/// time (so ids still sort by creation, as tools expect), then eight random ones. A driver's
/// ObjectId carries a per-process value and a counter instead, so one id reveals its
/// neighbours; here an id says nothing about any other.
pub fn new_object_id() -> Result<[u8; 12], String> {
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut bytes = [0u8; 12];
    bytes[..4].copy_from_slice(&(seconds as u32).to_be_bytes());
    getrandom::getrandom(&mut bytes[4..]).map_err(|e| format!("no randomness for an id: {e}"))?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_share_only_their_time() {
        let a = new_object_id().unwrap();
        let b = new_object_id().unwrap();
        assert_ne!(a[4..], b[4..]);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as u32;
        let stamped = u32::from_be_bytes(a[..4].try_into().unwrap());
        assert!(now.abs_diff(stamped) <= 1);
        // Not a counter: the last bytes of consecutive ids are not one apart.
        let tails: Vec<u64> = (0..100)
            .map(|_| u64::from_be_bytes(new_object_id().unwrap()[4..].try_into().unwrap()))
            .collect();
        assert!(tails.windows(2).all(|w| w[0].abs_diff(w[1]) > 1_000_000));
    }
}
