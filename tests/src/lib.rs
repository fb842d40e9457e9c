pub mod lab;
pub mod packets;
