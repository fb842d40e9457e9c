pub mod agent_lab;
pub mod lab;
pub mod packets;
pub mod topology;
