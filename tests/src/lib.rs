pub mod agent_lab;
pub mod clock;
pub mod lab;
pub mod packets;
pub mod topology;
