pub mod agent_lab;
pub mod clock;
pub mod cluster_lab;
pub mod http;
pub mod lab;
pub mod packets;
pub mod topology;
