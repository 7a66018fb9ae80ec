//! The agent's side of the `Attest` stream: one long-lived gRPC stream to
//! the controller on which each signed envelope is answered in order, so a
//! heartbeat costs two HTTP/2 DATA frames instead of a whole call. Any error
//! drops the stream (the next envelope opens a new one, on a channel that
//! reconnects by itself); a controller without the stream is sent one
//! unary `Submit` per envelope instead.

use lockstep_link::failover::FailoverChannel;
use lockstep_proto::pb::agent_service_client::AgentServiceClient;
use lockstep_proto::pb::{Envelope, SubmitReply};
use tokio::sync::mpsc;
use tonic::{Code, Status};
use tracing::info;

/// An open stream: envelopes go in, replies come out.
struct Open {
    envelopes: mpsc::Sender<Envelope>,
    replies: tonic::Streaming<SubmitReply>,
}

pub struct AttestStream {
    client: AgentServiceClient<FailoverChannel>,
    open: Option<Open>,
    /// False once the controller answered that it has no `Attest` method.
    streaming: bool,
}

impl AttestStream {
    pub fn new(client: AgentServiceClient<FailoverChannel>) -> Self {
        Self {
            client,
            open: None,
            streaming: true,
        }
    }

    /// Sends `envelope` and waits for its reply. An error is the status the
    /// controller answered (or the transport's); the stream is gone after it.
    pub async fn send(&mut self, envelope: Envelope) -> Result<SubmitReply, Status> {
        if !self.streaming {
            return self.submit(envelope).await;
        }
        let mut open = match self.open.take() {
            Some(open) => open,
            None => {
                // One in flight at a time: the agent waits for each reply.
                let (envelopes, rx) = mpsc::channel(1);
                match self
                    .client
                    .attest(tokio_stream::wrappers::ReceiverStream::new(rx))
                    .await
                {
                    Ok(response) => Open {
                        envelopes,
                        replies: response.into_inner(),
                    },
                    Err(status) if status.code() == Code::Unimplemented => {
                        info!("the controller serves no attestation stream; sending one call per attestation");
                        self.streaming = false;
                        return self.submit(envelope).await;
                    }
                    Err(status) => return Err(status),
                }
            }
        };
        if open.envelopes.send(envelope).await.is_err() {
            return Err(Status::unavailable("the attestation stream to the controller closed"));
        }
        match open.replies.message().await {
            Ok(Some(reply)) => {
                self.open = Some(open);
                Ok(reply)
            }
            Ok(None) => Err(Status::unavailable("the controller ended the attestation stream")),
            Err(status) => Err(status),
        }
    }

    async fn submit(&mut self, envelope: Envelope) -> Result<SubmitReply, Status> {
        self.client.submit(envelope).await.map(tonic::Response::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_controller_without_the_stream_gets_one_call_per_attestation() {
        // A gRPC server with no services answers every method Unimplemented.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_routes(tonic::service::Routes::default())
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_lazy();
        let channel = FailoverChannel::fixed(channel);
        let mut stream = AttestStream::new(AgentServiceClient::new(channel));
        let err = stream.send(Envelope::default()).await.unwrap_err();
        assert!(!stream.streaming, "fell back to unary Submit");
        // The unary Submit that followed was answered too (Unimplemented here).
        assert_eq!(err.code(), Code::Unimplemented, "{err:?}");
    }
}
