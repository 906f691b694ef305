//! The router's OpenAI-compatible HTTP API, end to end over real sockets: one test binary whose modules share
//! an in-process cluster and a minimal HTTP/1.1 client (`common`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step should stop the test loudly

mod admission;
mod api;
mod common;
mod load;
mod openai;
