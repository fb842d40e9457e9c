//! The IP family a model computes for. kube-proxy runs one proxier per family, each seeing only
//! its family's ClusterIPs, externalIPs, LoadBalancer IPs, EndpointSlices and node addresses
//! (pkg/proxy/serviceport.go, endpointschangetracker.go); the model does the same, generic over
//! the address type, so a dual-stack Service becomes two independent sets of frontends.
use std::{
    fmt::{Debug, Display},
    hash::Hash,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

/// What a Service lb serves in IPv6 only gets said (once, by the IPv4 model, which leaves it out).
pub const IPV6_SOCKETS_ONLY: &str = "IPv6-only Service: only sockets reach it (socket hooks at \
     connect time); IPv6 packets are not translated until lb's IPv6 packet path lands";

pub trait Family:
    Copy + Ord + Hash + Debug + Display + Into<IpAddr> + Send + Sync + 'static
{
    /// The name the API gives the family: `spec.ipFamilies` entries, EndpointSlice addressType.
    const NAME: &'static str;
    /// What this family's model says of a Service with addresses of the other family only,
    /// while lb serves that family in part (`None`: the other family's model serves it whole).
    const OTHER_FAMILY_ONLY: Option<&'static str>;

    fn of(ip: IpAddr) -> Option<Self>;
}

impl Family for Ipv4Addr {
    const NAME: &'static str = "IPv4";
    const OTHER_FAMILY_ONLY: Option<&'static str> = Some(IPV6_SOCKETS_ONLY);

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
