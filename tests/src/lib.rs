pub mod agent_lab;
pub mod bench_e2e;
pub mod cluster_lab;
pub mod http;
pub mod kube_proxy;
pub mod lab;
pub mod packets;
pub mod topology;
