/// Why an admin-side operation (the CLI's admin calls, `pier warm`) failed; printed for
/// the operator.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The request could not be made or was refused; the message says which and why.
    #[error("{0}")]
    Failed(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("registry request failed")]
    Upstream(#[from] pier_upstream::UpstreamError),
}
