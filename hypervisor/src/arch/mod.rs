//! Architecture-specific policy. Only x86-64 exists; the rest of the VMM
//! reaches CPU details through here and must never hard-code them itself.

pub mod x86_64;
