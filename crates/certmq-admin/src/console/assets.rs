//! The console's files, compiled in (`include_str!`): `cargo build` needs
//! no JavaScript toolchain. Hand-written ES modules, no framework.

pub const INDEX: &str = include_str!("assets/index.html");
pub const LOGIN: &str = include_str!("assets/login.html");

/// An asset by file name: its media type and body.
pub fn get(name: &str) -> Option<(&'static str, &'static str)> {
    Some(match name {
        "app.js" => (
            "text/javascript; charset=utf-8",
            include_str!("assets/app.js"),
        ),
        "login.js" => (
            "text/javascript; charset=utf-8",
            include_str!("assets/login.js"),
        ),
        "i18n.js" => (
            "text/javascript; charset=utf-8",
            include_str!("assets/i18n.js"),
        ),
        "style.css" => ("text/css; charset=utf-8", include_str!("assets/style.css")),
        _ => return None,
    })
}
