//! The IP family a model computes for. kube-proxy runs one proxier per family, each seeing only
//! its family's ClusterIPs, externalIPs, LoadBalancer IPs, EndpointSlices and node addresses
//! (pkg/proxy/serviceport.go, endpointschangetracker.go); the model does the same, generic over
//! the address type, so a dual-stack Service becomes two independent sets of frontends.
use std::{
    fmt::{Debug, Display},
    hash::Hash,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

pub trait Family:
    Copy + Ord + Hash + Debug + Display + Into<IpAddr> + Send + Sync + 'static
{
    /// The name the API gives the family: `spec.ipFamilies` entries, EndpointSlice addressType.
    const NAME: &'static str;
    /// What this family's model says of a Service with addresses of the other family only,
    /// while lb has no datapath for that family (`None`: the other family's model serves it).
    const OTHER_FAMILY_ONLY: Option<&'static str>;

    fn of(ip: IpAddr) -> Option<Self>;
}

impl Family for Ipv4Addr {
    const NAME: &'static str = "IPv4";
    const OTHER_FAMILY_ONLY: Option<&'static str> =
        Some("IPv6-only Service: not proxied until IPv6 support lands");

    fn of(ip: IpAddr) -> Option<Self> {
        match ip {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        }
    }
}

impl Family for Ipv6Addr {
    const NAME: &'static str = "IPv6";
    const OTHER_FAMILY_ONLY: Option<&'static str> = None;

    fn of(ip: IpAddr) -> Option<Self> {
        match ip {
            IpAddr::V6(v6) => Some(v6),
            IpAddr::V4(_) => None,
        }
    }
}
