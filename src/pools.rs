//! Address pools for project networks: a Docker target in driftless.yaml
//! may name IPv4 ranges (`address_pools: [{base: 10.231.0.0/16, size: 24}]`,
//! the shape of the engine's own `default-address-pools`) from which
//! driftless gives each project network without `ipam` a subnet of its own.
//! An engine's built-in pools run out at about 30 bridge networks; a named
//! pool lets one engine carry as many projects as the pool has subnets.
//!
//! Assignment is first fit: the first subnet of the pools, in order, that
//! overlaps no subnet of any network on the engine. A network keeps the
//! subnet it was given (the plan ignores the live subnet of a network that
//! asks for none), and a recreated network asks for its old one first.
//!
//! Parse errors are `String`: the message of a diagnostic placed by the
//! caller at the target's key; there is no cause to keep.

use std::fmt;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// An IPv4 network in CIDR form, its address masked to the prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ipv4Net {
    base: u32,
    prefix: u8,
}

impl Ipv4Net {
    /// `10.231.0.0/16`; host bits must be zero, as Docker requires of a
    /// pool's base and a subnet.
    pub fn parse(text: &str) -> Result<Ipv4Net, String> {
        let (addr, prefix) = text
            .split_once('/')
            .ok_or_else(|| format!("`{text}` is not in CIDR form (address/prefix)"))?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("`{text}`: `{addr}` is not an IPv4 address"))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| *p <= 32)
            .ok_or_else(|| format!("`{text}`: the prefix must be 0 to 32"))?;
        let net = Ipv4Net {
            base: u32::from(addr) & mask(prefix),
            prefix,
        };
        if net.base != u32::from(addr) {
            return Err(format!(
                "`{text}` has host bits set; the network is `{net}`"
            ));
        }
        Ok(net)
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    fn last(&self) -> u32 {
        self.base | !mask(self.prefix)
    }

    /// Whether the two networks share an address.
    pub fn overlaps(&self, other: &Ipv4Net) -> bool {
        self.base <= other.last() && other.base <= self.last()
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.base), self.prefix)
    }
}

fn mask(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

/// One pool as driftless.yaml writes it: `base` split into subnets of
/// prefix length `size`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AddressPool {
    pub base: String,
    pub size: u8,
}

/// A checked [`AddressPool`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool {
    base: Ipv4Net,
    size: u8,
}

impl AddressPool {
    /// The pool, or what is wrong with it.
    pub fn check(&self) -> Result<Pool, String> {
        let base = Ipv4Net::parse(&self.base)?;
        if self.size < base.prefix || self.size > 30 {
            return Err(format!(
                "address pool {}: `size: {}` must be between the base's prefix ({}) and 30",
                self.base, self.size, base.prefix
            ));
        }
        Ok(Pool {
            base,
            size: self.size,
        })
    }
}

impl Pool {
    /// The pool's subnets in address order.
    pub fn subnets(&self) -> impl Iterator<Item = Ipv4Net> + '_ {
        let step = 1u64 << (32 - u32::from(self.size));
        (0..self.subnet_count()).map(move |i| Ipv4Net {
            // In range: base + subnet_count * step - 1 is the pool's last address.
            base: self.base.base + (i * step) as u32,
            prefix: self.size,
        })
    }

    /// Whether the two pools share an address.
    pub fn overlaps(&self, other: &Pool) -> bool {
        self.base.overlaps(&other.base)
    }

    /// How many subnets the pool has (at least one).
    pub fn subnet_count(&self) -> u64 {
        1u64 << (self.size - self.base.prefix)
    }
}

impl fmt::Display for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (size {})", self.base, self.size)
    }
}

/// The subnet to give a new network: `preferred` (a recreated network's
/// old subnet) when it lies in a pool and is free, else the first subnet
/// of the pools that overlaps none of `used`.
pub fn first_free(pools: &[Pool], used: &[Ipv4Net], preferred: Option<Ipv4Net>) -> Option<Ipv4Net> {
    let free = |n: &Ipv4Net| !used.iter().any(|u| u.overlaps(n));
    if let Some(p) = preferred
        && pools
            .iter()
            .any(|pool| p.prefix == pool.size && pool.base.overlaps(&p))
        && free(&p)
    {
        return Some(p);
    }
    pools.iter().flat_map(Pool::subnets).find(free)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        Ipv4Net::parse(s).unwrap()
    }

    fn pool(base: &str, size: u8) -> Pool {
        AddressPool {
            base: base.into(),
            size,
        }
        .check()
        .unwrap()
    }

    #[test]
    fn cidrs_parse_and_refuse_what_docker_refuses() {
        assert_eq!(net("10.231.0.0/16").to_string(), "10.231.0.0/16");
        assert_eq!(net("0.0.0.0/0").to_string(), "0.0.0.0/0");
        for (bad, why) in [
            ("10.231.0.0", "CIDR form"),
            (
                "10.231.0.1/16",
                "host bits set; the network is `10.231.0.0/16`",
            ),
            ("10.231.0.0/33", "prefix must be 0 to 32"),
            ("fd00::/64", "not an IPv4 address"),
        ] {
            let e = Ipv4Net::parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        let e = AddressPool {
            base: "10.231.0.0/16".into(),
            size: 8,
        }
        .check()
        .unwrap_err();
        assert!(e.contains("between the base's prefix (16) and 30"), "{e}");
    }

    #[test]
    fn a_pool_splits_into_its_subnets() {
        let p = pool("10.231.0.0/22", 24);
        let all: Vec<String> = p.subnets().map(|n| n.to_string()).collect();
        assert_eq!(
            all,
            [
                "10.231.0.0/24",
                "10.231.1.0/24",
                "10.231.2.0/24",
                "10.231.3.0/24"
            ]
        );
        assert_eq!(p.subnet_count(), 4);
        assert_eq!(pool("0.0.0.0/0", 1).subnets().count(), 2);
    }

    #[test]
    fn the_first_subnet_nothing_overlaps_is_given() {
        let pools = [pool("10.231.0.0/23", 24), pool("10.232.0.0/24", 25)];
        // A network on the engine covering part of a subnet takes it.
        let used = [net("10.231.0.128/25"), net("172.17.0.0/16")];
        assert_eq!(first_free(&pools, &used, None), Some(net("10.231.1.0/24")));
        // A network wider than a subnet takes every subnet it covers.
        let used = [net("10.231.0.0/16")];
        assert_eq!(first_free(&pools, &used, None), Some(net("10.232.0.0/25")));
        let used = [net("10.231.0.0/16"), net("10.232.0.0/24")];
        assert_eq!(first_free(&pools, &used, None), None);
    }

    #[test]
    fn a_recreated_network_gets_its_old_subnet_back_when_free() {
        let pools = [pool("10.231.0.0/22", 24)];
        let old = net("10.231.2.0/24");
        assert_eq!(first_free(&pools, &[], Some(old)), Some(old));
        // Taken meanwhile, or not from a pool (any more): first fit.
        assert_eq!(
            first_free(&pools, &[old], Some(old)),
            Some(net("10.231.0.0/24"))
        );
        assert_eq!(
            first_free(&pools, &[], Some(net("192.168.5.0/24"))),
            Some(net("10.231.0.0/24"))
        );
    }
}
