//! The five Stellantis brands this project serves and the facts attached to each, in one place:
//! the brand preset ([`Preset`]: the realm sent as `x-introspect-realm`, the identity provider's
//! host, the app's redirect-URI scheme, the brand app's OAuth2 client and the scopes) and the VIN
//! manufacturer prefixes. Sources: `docs/real-account.md` (the presets, value by value),
//! `docs/api.md` (realm table) and public VIN WMI registries.

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

    /// The brand's preset: the brand app's OAuth2 client and where it signs in.
    pub fn preset(self) -> &'static Preset {
        match self {
            Brand::Peugeot => &PRESETS[0],
            Brand::Citroen => &PRESETS[1],
            Brand::Ds => &PRESETS[2],
            Brand::Opel => &PRESETS[3],
            Brand::Vauxhall => &PRESETS[4],
        }
    }

    /// The realm the API expects in `x-introspect-realm` (and the IdP in `realm`).
    pub fn realm(self) -> &'static str {
        self.preset().realm
    }

    /// The brand whose realm this is, if any.
    pub fn from_realm(realm: &str) -> Option<Brand> {
        Brand::ALL.into_iter().find(|b| b.realm() == realm)
    }

    /// The brand whose app client (id and secret) this is, if any.
    pub fn from_app_client(client_id: &str, client_secret: &str) -> Option<Brand> {
        Brand::ALL.into_iter().find(|b| {
            let p = b.preset();
            p.client_id == client_id && p.client_secret == client_secret
        })
    }

    /// The brand whose app client id this is, if any.
    pub fn from_app_client_id(client_id: &str) -> Option<Brand> {
        Brand::ALL
            .into_iter()
            .find(|b| b.preset().client_id == client_id)
    }

    /// The brand's identity provider, without a trailing slash.
    pub fn idp_base_url(self) -> String {
        format!("https://{}", self.preset().idp_host)
    }

    /// The private-scheme redirect URI the brand's mobile app registers for a country:
    /// `<scheme>://oauth2redirect/<cc>`, the country in lower case.
    pub fn app_redirect_uri(self, country: &str) -> String {
        format!(
            "{}://oauth2redirect/{}",
            self.preset().redirect_scheme,
            country.to_ascii_lowercase()
        )
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

/// What an owner of a brand's car needs to sign in the way the brand's own app does: the app's
/// OAuth2 client (published by the open-source clients owners use, since Stellantis never opened
/// its B2C developer portal), the identity provider and its realm, the redirect scheme and the
/// scopes. Sources, value by value: `docs/real-account.md`.
///
/// `client_secret` is the app's, not an owner's, but it is still a client secret: `Debug` hides it
/// and the configuration carries it as a `SecretString`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Preset {
    /// The identity provider's host (`https://<host>/am/oauth2/…`).
    pub idp_host: &'static str,
    /// The realm (`x-introspect-realm` at the API, `realm` at the IdP).
    pub realm: &'static str,
    /// The scheme of the app's redirect URI, `<scheme>://oauth2redirect/<cc>`.
    pub redirect_scheme: &'static str,
    /// The brand app's OAuth2 client id.
    pub client_id: &'static str,
    /// The brand app's OAuth2 client secret.
    pub client_secret: &'static str,
    /// The scopes asked for at sign-in and in grants.
    pub scopes: &'static str,
}

impl fmt::Debug for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Preset")
            .field("idp_host", &self.idp_host)
            .field("realm", &self.realm)
            .field("redirect_scheme", &self.redirect_scheme)
            .field("client_id", &self.client_id)
            .field("client_secret", &"[REDACTED]")
            .field("scopes", &self.scopes)
            .finish()
    }
}

/// The scopes every brand app asks for.
const SCOPES: &str = "openid profile";

/// The presets, in the order of [`Brand::ALL`].
const PRESETS: [Preset; 5] = [
    Preset {
        idp_host: "idpcvs.peugeot.com",
        realm: "clientsB2CPeugeot",
        redirect_scheme: "mymap",
        client_id: "1eebc2d5-5df3-459b-a624-20abfcf82530",
        client_secret: "T5tP7iS0cO8sC0lA2iE2aR7gK6uE5rF3lJ8pC3nO1pR7tL8vU1",
        scopes: SCOPES,
    },
    Preset {
        idp_host: "idpcvs.citroen.com",
        realm: "clientsB2CCitroen",
        redirect_scheme: "mymacsdk",
        client_id: "5364defc-80e6-447b-bec6-4af8d1542cae",
        client_secret: "iE0cD8bB0yJ0dS6rO3nN1hI2wU7uA5xR4gP7lD6vM0oH0nS8dN",
        scopes: SCOPES,
    },
    Preset {
        idp_host: "idpcvs.driveds.com",
        realm: "clientsB2CDS",
        redirect_scheme: "mymdssdk",
        client_id: "cbf74ee7-a303-4c3d-aba3-29f5994e2dfa",
        client_secret: "X6bE6yQ3tH1cG5oA6aW4fS6hK0cR0aK5yN2wE4hP8vL8oW5gU3",
        scopes: SCOPES,
    },
    Preset {
        idp_host: "idpcvs.opel.com",
        realm: "clientsB2COpel",
        redirect_scheme: "mymopsdk",
        client_id: "07364655-93cb-4194-8158-6b035ac2c24c",
        client_secret: "F2kK7lC5kF5qN7tM0wT8kE3cW1dP0wC5pI6vC0sQ5iP5cN8cJ8",
        scopes: SCOPES,
    },
    Preset {
        idp_host: "idpcvs.vauxhall.co.uk",
        realm: "clientsB2CVauxhall",
        redirect_scheme: "mymvxsdk",
        client_id: "122f3511-4f74-4a0c-bcda-af2f3b2e3a65",
        client_secret: "N1iY3jO4jI1sF2yS6yJ3rG7xQ4kL4kK1dO3xT5uX6dF3kW8gI6",
        scopes: SCOPES,
    },
];

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

    #[test]
    fn every_brand_has_a_complete_preset() {
        let mut ids = std::collections::HashSet::new();
        for b in Brand::ALL {
            let p = b.preset();
            assert!(p.idp_host.starts_with("idpcvs."), "{b}: {}", p.idp_host);
            assert!(!p.idp_host.contains('/'), "{b}: a host, not a URL");
            assert!(p.realm.starts_with("clientsB2C"), "{b}: {}", p.realm);
            assert!(
                !p.redirect_scheme.is_empty()
                    && p.redirect_scheme.bytes().all(|c| c.is_ascii_lowercase()),
                "{b}: {}",
                p.redirect_scheme
            );
            assert!(uuid::Uuid::parse_str(p.client_id).is_ok(), "{b}: client id");
            assert_eq!(p.client_secret.len(), 50, "{b}: client secret");
            assert!(p.client_secret.bytes().all(|c| c.is_ascii_alphanumeric()));
            assert_eq!(p.scopes, "openid profile", "{b}");
            assert!(ids.insert(p.client_id), "{b}: client id shared");
            assert_eq!(
                Brand::from_app_client(p.client_id, p.client_secret),
                Some(b)
            );
            assert_eq!(Brand::from_app_client_id(p.client_id), Some(b));
            assert_eq!(b.idp_base_url(), format!("https://{}", p.idp_host));
        }
        assert_eq!(
            Brand::from_app_client(Brand::Ds.preset().client_id, "x"),
            None
        );
        assert_eq!(Brand::Peugeot.idp_base_url(), "https://idpcvs.peugeot.com");
        assert_eq!(
            Brand::Vauxhall.app_redirect_uri("GB"),
            "mymvxsdk://oauth2redirect/gb"
        );
    }

    #[test]
    fn a_presets_debug_hides_its_secret() {
        for b in Brand::ALL {
            let d = format!("{:?}", b.preset());
            assert!(!d.contains(b.preset().client_secret), "{d}");
            assert!(d.contains(b.preset().client_id) && d.contains("REDACTED"));
        }
    }
}
