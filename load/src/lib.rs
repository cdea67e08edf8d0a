//! Simulated proxies for load tests and protocol tests: [`client::Client`]
//! speaks ADS (State of the World or Delta) to the daemon as Envoy does —
//! wildcard CDS and LDS, then EDS for the EDS clusters and RDS for the
//! listeners' route configurations, ACKing everything — and records each
//! response; [`coalesce`] writes to the daemon as Envoy's event loop does
//! (one write per turn, not per HTTP/2 frame); [`mesh`] writes a generated
//! mesh as a config folder; [`generation`] reads the daemon's own account
//! of per-proxy generation from its metrics.

pub mod client;
pub mod coalesce;
pub mod generation;
pub mod mesh;
