//! Which methods take a stream of requests and which answer with a stream, read from the
//! served services' file descriptor sets.

use std::collections::HashMap;

use prost::Message;

/// A method's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MethodKind {
    /// Takes a stream of requests (else exactly one).
    pub client_streaming: bool,
    /// Answers with a stream (else exactly one response).
    pub server_streaming: bool,
}

/// The methods of the served services, by `package.Service/Method`.
#[derive(Debug, Clone, Default)]
pub struct MethodTable {
    kinds: HashMap<String, MethodKind>,
}

impl MethodTable {
    /// The methods of every service in these encoded `FileDescriptorSet`s.
    pub fn from_descriptor_sets(sets: &[&[u8]]) -> Result<Self, prost::DecodeError> {
        let mut kinds = HashMap::new();
        for set in sets {
            let set = prost_types::FileDescriptorSet::decode(*set)?;
            for file in &set.file {
                let package = file.package();
                for service in &file.service {
                    for method in &service.method {
                        let name = if package.is_empty() {
                            format!("{}/{}", service.name(), method.name())
                        } else {
                            format!("{package}.{}/{}", service.name(), method.name())
                        };
                        kinds.insert(
                            name,
                            MethodKind {
                                client_streaming: method.client_streaming(),
                                server_streaming: method.server_streaming(),
                            },
                        );
                    }
                }
            }
        }
        Ok(Self { kinds })
    }

    /// The shape of `method`; an unknown method is taken as unary (the service answers it
    /// UNIMPLEMENTED).
    pub fn kind(&self, method: &str) -> MethodKind {
        self.kinds.get(method).copied().unwrap_or_default()
    }

    /// Whether `method` is served.
    pub fn contains(&self, method: &str) -> bool {
        self.kinds.contains_key(method)
    }
}
