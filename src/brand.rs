//! The five Stellantis brands this project serves and the facts attached to each: the realm sent as
//! `x-introspect-realm`, the identity provider's host, the app's redirect-URI scheme and the VIN
//! manufacturer prefixes. Sources: `docs/api.md` (realm table) and public VIN WMI registries.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A Stellantis brand served by the `connectedcar/v4` B2C API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Brand {
    Peugeot,
    Citroen,
    Ds,
    Opel,
    Vauxhall,
}

impl Brand {
    /// Every brand, in a fixed order (the simulator assigns users round-robin over it).
    pub const ALL: [Brand; 5] = [
        Brand::Peugeot,
        Brand::Citroen,
        Brand::Ds,
        Brand::Opel,
        Brand::Vauxhall,
    ];

    /// The lower-case name used in configuration files.
    pub fn key(self) -> &'static str {
        match self {
            Brand::Peugeot => "peugeot",
            Brand::Citroen => "citroen",
            Brand::Ds => "ds",
            Brand::Opel => "opel",
            Brand::Vauxhall => "vauxhall",
        }
    }

    /// The realm the API expects in `x-introspect-realm` (and the IdP in `realm`).
    pub fn realm(self) -> &'static str {
        match self {
            Brand::Peugeot => "clientsB2CPeugeot",
            Brand::Citroen => "clientsB2CCitroen",
            Brand::Ds => "clientsB2CDS",
            Brand::Opel => "clientsB2COpel",
            Brand::Vauxhall => "clientsB2CVauxhall",
        }
    }

    /// The brand whose realm this is, if any.
    pub fn from_realm(realm: &str) -> Option<Brand> {
        Brand::ALL.into_iter().find(|b| b.realm() == realm)
    }

    /// The brand's identity provider, without a trailing slash.
    pub fn idp_base_url(self) -> &'static str {
        match self {
            Brand::Peugeot => "https://idpcvs.peugeot.com",
            Brand::Citroen => "https://idpcvs.citroen.com",
            Brand::Ds => "https://idpcvs.driveds.com",
            Brand::Opel => "https://idpcvs.opel.com",
            Brand::Vauxhall => "https://idpcvs.vauxhall.co.uk",
        }
    }

    /// The private-scheme redirect URI the brand's mobile app registers (`{cc}` = country code).
    pub fn app_redirect_uri(self, country: &str) -> String {
        let scheme = match self {
            Brand::Peugeot => "mymap",
            Brand::Citroen => "mymacsdk",
            Brand::Ds => "mymdssdk",
            Brand::Opel => "mymopsdk",
            Brand::Vauxhall => "mymvxsdk",
        };
        format!("{scheme}://oauth2redirect/{}", country.to_ascii_lowercase())
    }

    /// The brand string the API puts in a vehicle's `brand` field.
    pub fn display(self) -> &'static str {
        match self {
            Brand::Peugeot => "Peugeot",
            Brand::Citroen => "Citroen",
            Brand::Ds => "DS",
            Brand::Opel => "Opel",
            Brand::Vauxhall => "Vauxhall",
        }
    }

    /// The World Manufacturer Identifier that starts this brand's VINs.
    pub fn vin_prefix(self) -> &'static str {
        match self {
            Brand::Peugeot => "VR3",
            Brand::Citroen => "VR7",
            Brand::Ds => "VR1",
            Brand::Opel => "W0L",
            Brand::Vauxhall => "W0V",
        }
    }

    /// The domain of the brand's 3D-visual picture server.
    pub fn picture_host(self) -> &'static str {
        match self {
            Brand::Peugeot => "visuel3d-secure.peugeot.com",
            Brand::Citroen => "visuel3d-secure.citroen.com",
            Brand::Ds => "visuel3d-secure.dsautomobiles.com",
            Brand::Opel => "visuel3d-secure.opel.com",
            Brand::Vauxhall => "visuel3d-secure.vauxhall.co.uk",
        }
    }
}

impl fmt::Display for Brand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key())
    }
}

/// The error for a brand name that is not one of the five.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown brand `{0}` (expected one of peugeot, citroen, ds, opel, vauxhall)")]
pub struct UnknownBrand(pub String);

impl FromStr for Brand {
    type Err = UnknownBrand;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Brand::ALL
            .into_iter()
            .find(|b| b.key().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| UnknownBrand(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn realms_round_trip_and_names_parse() {
        for b in Brand::ALL {
            assert_eq!(Brand::from_realm(b.realm()), Some(b));
            assert_eq!(b.key().parse::<Brand>(), Ok(b));
            assert_eq!(b.vin_prefix().len(), 3);
        }
        assert!("fiat".parse::<Brand>().is_err());
        assert_eq!(
            Brand::Opel.app_redirect_uri("DE"),
            "mymopsdk://oauth2redirect/de"
        );
    }
}
