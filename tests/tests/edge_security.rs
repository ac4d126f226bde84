//! Pier at the edge, tried as an attacker would (issue "Safe at the edge"), against a
//! real `pier` process:
//!
//! - `admin`: a hostile web page's requests (foreign `Origin`, a rebinding `Host`, JSON
//!   sent as `text/plain`) change nothing; `//`-style paths get the same credentials check
//!   as the router's; an unauthenticated admin API off loopback refuses to start.
//! - `browser`: the same from a page in Debian's Chromium (playwright-core): no-cors
//!   fetch, text/plain, a form POST and a rebinding name change and read nothing.
//! - `connections`: half-sent requests, silent TCP and TLS connections are closed after
//!   the header and handshake timeouts; connections over the cap get a clean 503; clients
//!   that never read a blob don't stall anyone else's pulls.
//! - `protocol`: tag races, lying descriptor sizes, a slow PATCH, invalid tags, hostile
//!   Host headers and method names, the token endpoint's errors.
//!
//! `PIER_SKIP_LINT=1 scripts/test.sh -p pier-e2e --test edge_security`

#[path = "edge_security/admin.rs"]
mod admin;
#[path = "edge_security/browser.rs"]
mod browser;
#[path = "edge_security/connections.rs"]
mod connections;
#[path = "edge_security/protocol.rs"]
mod protocol;
#[path = "edge_security/support.rs"]
mod support;
