//! Small widgets every tab uses the same way: a number field that shows why a typed value is
//! refused instead of clamping it, and a path shown as a link that opens its folder in the
//! OS's file browser.

use std::ops::RangeInclusive;
use std::path::Path;
use std::str::FromStr;

/// A number typed as text: a value outside `range` or not a number is not taken (the bound
/// value keeps its last valid value) and the field says why, in red, beside it. Returns the
/// text field's response (`changed()` when a valid value was taken).
pub fn number_field<T>(
    ui: &mut egui::Ui,
    label: &str,
    tooltip: &str,
    value: &mut T,
    range: RangeInclusive<T>,
) -> egui::Response
where
    T: FromStr + PartialOrd + Copy + std::fmt::Display + Send + Sync + 'static,
{
    ui.horizontal(|ui| {
        let l = ui.label(label).on_hover_text(tooltip);
        let id = ui.make_persistent_id(("number_field", label));
        // The text being typed lives in egui's memory until it is valid (or the value changes
        // from elsewhere).
        let mut text: String = ui
            .data(|d| d.get_temp::<(String, String)>(id))
            .filter(|(_, shown)| *shown == value.to_string())
            .map_or_else(|| value.to_string(), |(typed, _)| typed);
        let response = ui
            .add(egui::TextEdit::singleline(&mut text).desired_width(70.0))
            .labelled_by(l.id)
            .on_hover_text(tooltip);
        let problem = match text.trim().parse::<T>() {
            Ok(v) if range.contains(&v) => {
                if response.changed() {
                    *value = v;
                }
                None
            }
            Ok(_) => Some(format!(
                "must be between {} and {}; keeps {}",
                range.start(),
                range.end(),
                value
            )),
            // A number the type cannot hold (-5 for a count, 2.5 for a size) is out of the
            // range, not "not a number".
            Err(_) => Some(match text.trim().parse::<f64>() {
                Ok(x) if x.is_finite() && x.fract() == 0.0 => format!(
                    "must be between {} and {}; keeps {}",
                    range.start(),
                    range.end(),
                    value
                ),
                Ok(x) if x.is_finite() => format!(
                    "must be a whole number between {} and {}; keeps {}",
                    range.start(),
                    range.end(),
                    value
                ),
                _ => format!("not a number; keeps {value}"),
            }),
        };
        ui.data_mut(|d| d.insert_temp(id, (text, value.to_string())));
        if let Some(p) = problem {
            super::error_label(ui, &p);
        }
        response
    })
    .inner
}

/// The base folder relative paths start in ([`super::base_folder`]), on one line (cut with
/// "…" when long; the whole path in its tooltip), as every tab shows it under its path fields.
pub fn base_folder_note(ui: &mut egui::Ui) -> egui::Response {
    let base = super::base_folder().display().to_string();
    ui.add(egui::Label::new(egui::RichText::new(format!("Base folder: {base}")).weak()).truncate())
        .on_hover_text(format!(
            "Relative paths start in the working directory the app was started in, {base}"
        ))
}

/// `path` as a link; a click opens its folder (the path itself when it is a folder) in the
/// OS's file browser. Returns the error to show when no file browser could be started.
pub fn path_link(ui: &mut egui::Ui, path: &Path) -> Option<String> {
    let clicked = ui
        .link(path.display().to_string())
        .on_hover_text("Open the folder in the file browser")
        .clicked();
    if !clicked {
        return None;
    }
    open_in_file_browser(path).err()
}

/// Whether links start the OS's file browser (see [`start_file_browsers`]).
static START_FILE_BROWSERS: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(true);

/// Whether clicking a path link starts the OS's file browser (default: yes). The tests click
/// links and turn it off; the click is then handled as a success without starting anything.
pub fn start_file_browsers(start: bool) {
    START_FILE_BROWSERS.store(start, std::sync::atomic::Ordering::Relaxed);
}

/// Opens `path`'s folder (or `path`, a folder) with the OS's file browser: `open` on macOS,
/// `xdg-open` elsewhere.
pub fn open_in_file_browser(path: &Path) -> Result<(), String> {
    let folder = if path.is_dir() {
        path
    } else {
        path.parent().unwrap_or(Path::new("."))
    };
    if !START_FILE_BROWSERS.load(std::sync::atomic::Ordering::Relaxed) {
        return Ok(());
    }
    let program = if cfg!(target_os = "macos") {
        "open"
    } else {
        "xdg-open"
    };
    std::process::Command::new(program)
        .arg(folder)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map(|mut child| {
            // Reaped on a helper thread so no zombie is left behind.
            std::thread::spawn(move || child.wait());
        })
        .map_err(|e| {
            format!(
                "could not open {} in a file browser ({program}: {})",
                folder.display(),
                super::feedback::io_sentence(&e)
            )
        })
}

/// The "Group size" choice of the quantization group sizes MLX supports; `tip` says what it
/// applies to in the tab.
pub fn group_size_field(ui: &mut egui::Ui, group_size: &mut i32, tip: &str) {
    ui.label("Group size").on_hover_text(tip);
    for g in crate::quant::SUPPORTED_GROUPS {
        ui.selectable_value(group_size, g, g.to_string())
            .on_hover_text(format!("{g} weights share one scale and bias"));
    }
}
