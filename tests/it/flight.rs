//! Flight SQL port: authenticated handshake (the statement surface comes with the Flight issue).

use arrow_flight::HandshakeRequest;
use arrow_flight::flight_service_client::FlightServiceClient;
use base64::Engine as _;

use crate::harness::TestServer;

async fn handshake(
    s: &TestServer,
    authorization: &str,
) -> Result<tonic::Response<tonic::Streaming<arrow_flight::HandshakeResponse>>, tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", s.flight))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = FlightServiceClient::new(channel);
    let mut req = tonic::Request::new(futures::stream::iter(vec![HandshakeRequest::default()]));
    req.metadata_mut()
        .insert("authorization", authorization.parse().unwrap());
    client.handshake(req).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_accepts_basic_with_jwt_password_and_returns_bearer() {
    let s = TestServer::start().await;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("admin:{}", s.admin));
    let resp = handshake(&s, &format!("Basic {basic}")).await.unwrap();
    let bearer = resp
        .metadata()
        .get("authorization")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(bearer, format!("Bearer {}", s.admin));
    let resp = handshake(&s, &format!("Bearer {}", s.admin)).await.unwrap();
    assert!(resp.metadata().get("authorization").is_some());

    let bad = base64::engine::general_purpose::STANDARD.encode("admin:not-a-token");
    let err = handshake(&s, &format!("Basic {bad}")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    let err = handshake(&s, "Bearer x.y.z").await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
}
