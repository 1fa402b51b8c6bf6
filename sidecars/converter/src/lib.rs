//! The converter worker's parts: what it does with a `video` message ([`handler`]), where videos
//! and MP3s live ([`store`]), how ffmpeg must read a video ([`layout`]) and running it
//! ([`convert`]).

pub mod convert;
pub mod handler;
pub mod layout;
pub mod store;
