//! wit-bindgen output. The step export and the shared interfaces (`types`, `metrics`, `log`) are
//! generated once in `common`; each domain's capability imports in their own module, reusing the
//! shared types, so every domain sees the same Rust types.

#![allow(missing_docs, clippy::all)]

pub mod common {
    wit_bindgen::generate!({
        world: "sdk",
        path: "../wit",
        runtime_path: "crate::__private::wit_bindgen::rt",
        additional_derives: [PartialEq],
        pub_export_macro: true,
        export_macro_name: "__export_step_world",
        default_bindings_module: "themis_runbook_sdk::bindings::common",
    });
}

macro_rules! domain_imports {
    ($module:ident, $world:literal) => {
        pub mod $module {
            wit_bindgen::generate!({
                world: $world,
                path: "../wit",
                runtime_path: "crate::__private::wit_bindgen::rt",
                additional_derives: [PartialEq],
                with: {
                    "themis:runbook/types@0.1.0": crate::bindings::common::themis::runbook::types,
                },
            });
        }
    };
}

domain_imports!(kafka, "sdk-kafka");
domain_imports!(kubernetes, "sdk-kubernetes");
domain_imports!(postgres, "sdk-postgres");
