pub mod lab;
pub mod packets;
pub mod topology;
