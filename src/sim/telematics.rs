//! placeholder
use std::sync::Arc;
pub(super) fn routes() -> axum::Router<Arc<super::Shared>> {
    axum::Router::new()
}
