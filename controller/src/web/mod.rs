//! The fleet board: a live web page for the pre-market check, served by
//! the controller on its own HTTPS listener (`[board]`). Pages are rendered
//! on the server ([`pages`], maud); a small script of our own
//! (`board.js`) follows Server-Sent Events ([`feed`]: the event id is the
//! audit seq, so a page that reconnects resumes where it was) and fetches
//! the changed part again. Logging in is a one-time link from `lockstep
//! board login` ([`crate::logins`]); every action ([`actions`]) is
//! authorised by the console's own table, protected against cross-site
//! requests, confirmed by typing its scope, and audited.

mod actions;
mod automatic_answers;
mod board;
mod feed;
mod headers;
mod pages;
mod server;

pub use server::serve;
