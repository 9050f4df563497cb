mod common;
use common::*;
use reqwest::Method;

#[tokio::test]
async fn health_answers() {
    let app = TestApp::spawn().await;
    let (status, body) = send(app.request(Method::GET, "/health")).await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "healthy");
    app.stop().await;
}
