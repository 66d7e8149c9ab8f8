//! Endpoint choice: weighted random over the candidate endpoints a route decision names.

use crate::route::Endpoint;
use std::net::SocketAddr;

/// Pick one endpoint, weighted by `weight` (a weight of 0 counts as 1, like an unset weight).
/// `None` when there are no candidates.
pub fn pick(endpoints: &[Endpoint], rng: &mut impl rand::Rng) -> Option<SocketAddr> {
    match endpoints.len() {
        0 => None,
        1 => Some(endpoints[0].addr),
        _ => {
            let total: u64 = endpoints.iter().map(|e| u64::from(e.weight.max(1))).sum();
            let mut x = rng.gen_range(0..total);
            for e in endpoints {
                let w = u64::from(e.weight.max(1));
                if x < w {
                    return Some(e.addr);
                }
                x -= w;
            }
            endpoints.last().map(|e| e.addr)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn ep(port: u16, weight: u32) -> Endpoint {
        Endpoint {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            labels: Default::default(),
            weight,
        }
    }

    #[test]
    fn empty_and_single() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        assert_eq!(pick(&[], &mut rng), None);
        assert_eq!(pick(&[ep(1, 0)], &mut rng), Some(ep(1, 0).addr));
    }

    #[test]
    fn weights_shape_the_distribution() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let eps = [ep(1, 90), ep(2, 10), ep(3, 0)];
        let mut counts = [0u32; 3];
        for _ in 0..10_000 {
            let a = pick(&eps, &mut rng).unwrap();
            counts[(a.port() - 1) as usize] += 1;
        }
        // expected 8911 / 990 / 99 of 10000 (weights 90, 10, 1)
        assert!((8600..9200).contains(&counts[0]), "{counts:?}");
        assert!((800..1200).contains(&counts[1]), "{counts:?}");
        assert!((40..200).contains(&counts[2]), "{counts:?}");
    }
}
