//! What the engine reports: the JSON of `/diff.json`, read back by
//! `sidetrack diff`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::compare::Kind;

/// Every endpoint's counts, fields and samples since the last reset.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub relative_threshold_pct: f64,
    pub absolute_threshold_pct: f64,
    /// Seconds since the engine started or was last reset.
    pub since_reset_secs: f64,
    /// Requests compared, over all endpoints.
    pub requests: u64,
    /// Endpoints with reported fields first (most first), then by
    /// requests.
    pub endpoints: Vec<EndpointReport>,
    /// Bytes the kept samples take, and how many samples (a field's
    /// values, or a whole exchange) were not kept because
    /// `max_sample_bytes` was spent.
    pub sample_bytes: usize,
    pub samples_dropped: u64,
}

impl Report {
    /// Reported fields over all endpoints.
    pub fn reported_fields(&self) -> usize {
        self.endpoints.iter().map(|e| e.reported_fields).sum()
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EndpointReport {
    pub name: String,
    /// Requests compared.
    pub requests: u64,
    /// Requests whose candidate response differed from the primary's in
    /// any field (noise or not).
    pub differing: u64,
    /// Requests whose secondary response differed from the primary's.
    pub noisy: u64,
    pub reported_fields: usize,
    /// Differences not counted because the endpoint already had
    /// `max_fields_per_endpoint` fields.
    pub fields_overflowed: u64,
    /// Reported fields first, then by raw count, then by path.
    pub fields: Vec<FieldReport>,
    /// The whole exchanges the fields' samples point into.
    pub exchanges: Vec<ExchangeSample>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FieldReport {
    /// `status`, `headers.NAME`, `STATUS.body...`.
    pub path: String,
    /// How often each kind of difference was seen (primary vs candidate).
    pub kinds: BTreeMap<Kind, u64>,
    /// Requests whose candidate differed from the primary in this field.
    pub raw: u64,
    /// Requests whose secondary differed from the primary in this field.
    pub noise: u64,
    pub raw_pct: f64,
    pub noise_pct: f64,
    pub relative_pct: f64,
    pub absolute_pct: f64,
    /// Whether the field passes the noise rule (see `diff::noise`).
    pub reported: bool,
    /// The first differences seen (primary vs candidate).
    pub samples: Vec<FieldSample>,
}

/// One difference of a field: the two values, rendered short (`None`:
/// absent on that side), and the whole exchange when it was kept.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FieldSample {
    pub primary: Option<String>,
    pub candidate: Option<String>,
    /// An index into the endpoint's `exchanges`.
    pub exchange: Option<usize>,
}

/// A request and its three responses, bodies cut to `sample_body_bytes`,
/// credentials redacted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExchangeSample {
    pub request: RequestSample,
    pub primary: ResponseSample,
    pub secondary: ResponseSample,
    pub candidate: ResponseSample,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RequestSample {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub body_truncated: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResponseSample {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub body_truncated: bool,
}
