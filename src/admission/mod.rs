//! AdmissionReview in, decision out. For now: where images live in each kind of object.

pub mod workload;
