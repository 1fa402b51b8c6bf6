//! Login budgets: how many passwords may be tried, and by whom, within a window.
//!
//! Three counters are charged before a password is checked, one after the other, each in one
//! atomic statement whose result is read back:
//!
//! 1. the client address (`login_address_max_failures`): one address cannot spray guesses
//!    over many accounts. Accounts that logged in from that address before are exempt, so
//!    others behind the same address (a NAT) cannot keep them out;
//! 2. the client address and the email (`login_max_failures`): the owner's own typing
//!    mistakes, and one attacker's guesses at one account;
//! 3. the email from anywhere (`login_account_max_failures`): many addresses guessing at one
//!    account. Once it is spent, only addresses the account has logged in from before (in the
//!    last [`KNOWN_FOR_SECONDS`]) are still checked, so a flood of failures from elsewhere
//!    never keeps the owner out from where they log in.
//!
//! A check is charged before it runs, so N concurrent guesses get exactly the budget's worth
//! of checks: each charge makes the count one higher in one statement, and each attempt
//! compares the count its own statement made. An attempt refused by an earlier counter is not charged to the later
//! ones, so one address adds at most its address-and-email budget to an account's count. A
//! successful login takes its own charge back, and clears its address-and-email count.

use component_http::Reply;

use crate::Host;

/// How long a successful login keeps its address known to the account.
pub const KNOWN_FOR_SECONDS: i64 = 90 * 24 * 3600;
/// Emails are cut to this many characters in counter names; no account's is longer.
const EMAIL_CHARS: usize = 255;

/// The budgets, per window of `window_seconds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budgets {
    pub per_address: i64,
    pub per_account_and_address: i64,
    pub per_account: i64,
    pub window_seconds: i64,
}

/// A counter after a charge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Charge {
    pub attempts: i64,
    pub window_start: i64,
}

/// One attempt's counters.
pub struct Plan<'a> {
    budgets: &'a Budgets,
    client: &'a str,
    email: String,
    now: i64,
}

impl<'a> Plan<'a> {
    /// `client` is the address's counting key (`client_key`).
    pub fn new(budgets: &'a Budgets, client: &'a str, email: &str, now: i64) -> Self {
        Self {
            budgets,
            client,
            email: email.chars().take(EMAIL_CHARS).collect(),
            now,
        }
    }

    fn address(&self) -> String {
        format!("address {}", self.client)
    }

    fn account_and_address(&self) -> String {
        format!("pair {} {}", self.client, self.email)
    }

    fn account(&self) -> String {
        format!("account {}", self.email)
    }
}

/// Which budget is spent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Address,
    AccountAndAddress,
    Account,
}

/// A 429, and when to try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub scope: Scope,
    pub retry_after: i64,
}

impl Refusal {
    pub fn reply(&self) -> Reply {
        let (text, outcome) = match self.scope {
            Scope::Address => (
                "too many failed logins from this address",
                "throttled_address",
            ),
            Scope::AccountAndAddress => (
                "too many failed logins for this account from this address",
                "throttled_account_address",
            ),
            Scope::Account => (
                "too many failed logins for this account",
                "throttled_account",
            ),
        };
        Reply::text(429, text, outcome).header("retry-after", self.retry_after.to_string())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Check the password.
    Check,
    Refuse(Refusal),
}

/// Charges the attempt to its counters in order, and says whether its password may be checked.
pub fn admit(plan: &Plan<'_>, host: &impl Host, db_url: &str) -> Result<Verdict, String> {
    let budgets = plan.budgets;
    let window_floor = plan.now - budgets.window_seconds;
    // The seconds until the counter's window ends, when this charge put it over `budget`.
    let over = |bucket: String, budget: i64| -> Result<Option<i64>, String> {
        let charge = host.charge(db_url, &bucket, plan.now, window_floor)?;
        Ok((charge.attempts > budget)
            .then(|| (charge.window_start + budgets.window_seconds - plan.now).max(1)))
    };
    // Asked only once a budget is spent, and at most once.
    let known = std::cell::OnceCell::new();
    let is_known = || -> Result<bool, String> {
        if let Some(known) = known.get() {
            return Ok(*known);
        }
        let since = plan.now - KNOWN_FOR_SECONDS;
        let answer = host.is_known(db_url, &plan.email, plan.client, since)?;
        Ok(*known.get_or_init(|| answer))
    };
    let refuse = |scope, retry_after| Ok(Verdict::Refuse(Refusal { scope, retry_after }));
    // Others behind the same address (an office, a carrier's NAT) may spend its budget: an
    // account that logged in from there before still gets its own checks.
    if let Some(retry_after) = over(plan.address(), budgets.per_address)? {
        if !is_known()? {
            return refuse(Scope::Address, retry_after);
        }
    }
    if let Some(retry_after) = over(plan.account_and_address(), budgets.per_account_and_address)? {
        return refuse(Scope::AccountAndAddress, retry_after);
    }
    if let Some(retry_after) = over(plan.account(), budgets.per_account)? {
        if !is_known()? {
            return refuse(Scope::Account, retry_after);
        }
    }
    Ok(Verdict::Check)
}

/// After the right password: takes the attempt's charges back, forgets the address's failures
/// at this account, and remembers the address as the account's. One success in
/// [`SWEEP_EVERY`] also sweeps out expired counters, when `sweep` says so (the caller rolls
/// the dice); a failed sweep is only logged, via the returned note.
pub fn settle_success(
    plan: &Plan<'_>,
    host: &impl Host,
    db_url: &str,
    sweep: bool,
) -> Result<Option<String>, String> {
    host.refund(db_url, &plan.address(), false)?;
    host.refund(db_url, &plan.account_and_address(), true)?;
    host.refund(db_url, &plan.account(), false)?;
    host.remember(db_url, &plan.email, plan.client, plan.now)?;
    if !sweep {
        return Ok(None);
    }
    Ok(host
        .forget_expired(db_url, plan.now - plan.budgets.window_seconds)
        .err())
}

/// How rarely a success sweeps the counters table: the sweep is a range delete, kept off most
/// logins so it neither loads MySQL nor contends with the counters' own updates.
pub const SWEEP_EVERY: u32 = 32;
