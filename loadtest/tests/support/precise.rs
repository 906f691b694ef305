//! A stub `cleave.v1.Generation` server whose token times are exact: one OS thread owns every stream's deadlines,
//! sleeps until ~60 µs before the earliest one and spins the rest, then hands the message to the stream. It has no
//! router, no tokenizer and no tokio timer in the timing path, so what a client measures against it beyond the
//! configured TTFT/ITL is the client's own error plus loopback gRPC.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::pin::Pin;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use cleave_proto::v1;
use cleave_proto::v1::generation_server::{Generation, GenerationServer};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

type Tx = mpsc::UnboundedSender<Result<v1::GenerateResponse, Status>>;

struct Job {
    first: Instant,
    itl: Duration,
    tokens: u32,
    tx: Tx,
}

pub struct PreciseStub {
    jobs: std_mpsc::Sender<Job>,
    ttft: Duration,
    itl: Duration,
}

/// Runs the timer thread: `(due, job index, tokens sent so far)` in a min-heap.
fn timer_thread(rx: std_mpsc::Receiver<Job>) {
    let mut heap: BinaryHeap<Reverse<(Instant, usize, u32)>> = BinaryHeap::new();
    let mut jobs: Vec<Option<Job>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    loop {
        loop {
            let job = if heap.is_empty() {
                match rx.recv() {
                    Ok(j) => Some(j),
                    Err(_) => return,
                }
            } else {
                rx.try_recv().ok()
            };
            let Some(job) = job else { break };
            let slot = free.pop().unwrap_or_else(|| {
                jobs.push(None);
                jobs.len() - 1
            });
            heap.push(Reverse((job.first, slot, 0)));
            jobs[slot] = Some(job);
        }
        let Some(&Reverse((due, slot, sent))) = heap.peek() else {
            continue;
        };
        let now = Instant::now();
        if due > now {
            let wait = due - now;
            if wait > Duration::from_micros(100) {
                std::thread::sleep((wait - Duration::from_micros(60)).min(Duration::from_micros(500)));
            } else {
                std::hint::spin_loop();
            }
            continue;
        }
        heap.pop();
        let job = jobs[slot].as_ref().unwrap();
        let last = sent + 1 == job.tokens;
        let message = v1::GenerateResponse {
            token_ids: vec![1000 + sent],
            text: " tok".into(),
            finish_reason: if last { v1::FinishReason::Length as i32 } else { 0 },
            usage: last.then_some(v1::Usage {
                prompt_tokens: 32,
                cached_tokens: 0,
                completion_tokens: job.tokens,
            }),
            ..Default::default()
        };
        let gone = job.tx.send(Ok(message)).is_err();
        if last || gone {
            jobs[slot] = None;
            free.push(slot);
        } else {
            heap.push(Reverse((due + job.itl, slot, sent + 1)));
        }
    }
}

#[tonic::async_trait]
impl Generation for PreciseStub {
    type GenerateStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<v1::GenerateResponse, Status>> + Send>>;

    async fn generate(&self, request: Request<v1::GenerateRequest>) -> Result<Response<Self::GenerateStream>, Status> {
        let first = Instant::now() + self.ttft;
        let tokens = request.into_inner().max_tokens.unwrap_or(1).max(1);
        let (tx, rx) = mpsc::unbounded_channel();
        self.jobs
            .send(Job {
                first,
                itl: self.itl,
                tokens,
                tx,
            })
            .map_err(|_| Status::unavailable("timer thread gone"))?;
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::UnboundedReceiverStream::new(rx),
        )))
    }

    async fn tokenize(&self, _: Request<v1::TokenizeRequest>) -> Result<Response<v1::TokenizeResponse>, Status> {
        Err(Status::unimplemented("stub"))
    }

    async fn list_models(&self, _: Request<v1::ListModelsRequest>) -> Result<Response<v1::ListModelsResponse>, Status> {
        Ok(Response::new(v1::ListModelsResponse { models: Vec::new() }))
    }
}

/// Serves the stub on a loopback port (TCP_NODELAY); returns its `grpc://` URL.
pub async fn start(ttft: Duration, itl: Duration) -> String {
    let (jobs, rx) = std_mpsc::channel();
    std::thread::spawn(move || timer_thread(rx));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let stub = PreciseStub { jobs, ttft, itl };
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(GenerationServer::new(stub))
            .serve_with_incoming(incoming),
    );
    format!("grpc://{addr}")
}
