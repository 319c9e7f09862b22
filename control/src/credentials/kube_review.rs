//! [`TokenReviewer`] on the Kubernetes API: `POST
//! /apis/authentication.k8s.io/v1/tokenreviews` with kube-rs. The control plane's
//! ServiceAccount needs `create` on `tokenreviews` (deploy/'s binding to
//! `system:auth-delegator`).

use std::future::Future;
use std::pin::Pin;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};

use super::review::{ReviewStatus, TokenReviewer};

#[derive(Clone)]
pub struct KubeReviewer {
    client: kube::Client,
}

impl std::fmt::Debug for KubeReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KubeReviewer")
    }
}

impl KubeReviewer {
    pub fn new(client: kube::Client) -> Self {
        KubeReviewer { client }
    }
}

impl TokenReviewer for KubeReviewer {
    fn review<'a>(
        &'a self,
        token: &'a str,
        audience: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<ReviewStatus, String>> + Send + 'a>> {
        Box::pin(async move {
            let api: Api<TokenReview> = Api::all(self.client.clone());
            let review = TokenReview {
                spec: TokenReviewSpec {
                    token: token.to_owned(),
                    audiences: Some(vec![audience.to_owned()]),
                },
                ..TokenReview::default()
            };
            let answer = api
                .create(&PostParams::default(), &review)
                .await
                .map_err(|e| e.to_string())?;
            let status = answer.status.unwrap_or_default();
            let user = status.user.unwrap_or_default();
            Ok(ReviewStatus {
                authenticated: status.authenticated.unwrap_or(false),
                username: user.username,
                extra: user.extra.unwrap_or_default().into_iter().collect(),
                audiences: status.audiences.unwrap_or_default(),
                error: status.error,
            })
        })
    }
}
