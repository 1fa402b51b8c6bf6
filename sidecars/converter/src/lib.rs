//! The converter worker's parts: what it does with a `video` message ([`handler`]), where videos
//! and MP3s live ([`store`]), how ffmpeg must read a video ([`layout`]), running
//! ffmpeg ([`convert`]) and keeping it started ahead of the jobs ([`warm`]).

pub mod convert;
pub mod handler;
pub mod layout;
pub mod reason;
pub mod store;
pub mod sweeper;
pub mod tags;
pub mod warm;
