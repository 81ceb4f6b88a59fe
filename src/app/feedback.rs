//! What the app tells the user beside each tab's own widgets: the one error model (the latest
//! error with its tab and time, dismissable, cleared by a later success in the same place),
//! errors worded as sentences instead of raw OS texts, and the job board (which job runs, which
//! wait behind it, which are being cancelled) that the tabs and the status bar read.

use std::time::SystemTime;

use super::Tab;

/// Where an error happened: a tab and the action in it (`"open"`, `"job"`, `"export"`…), so a
/// success of the same action clears it and a success elsewhere does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Place {
    pub tab: Tab,
    pub action: &'static str,
}

impl Place {
    pub const fn new(tab: Tab, action: &'static str) -> Self {
        Self { tab, action }
    }
}

/// An error as the status bar shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct AppError {
    pub place: Place,
    pub text: String,
    pub at: SystemTime,
}

impl AppError {
    /// "Samples tab, 14:03:12: TEXT" (UTC time of day, as the logs of a long run are read).
    pub fn headline(&self) -> String {
        let secs = self
            .at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
        format!(
            "{} tab, {h:02}:{m:02}:{s:02} UTC: {}",
            self.place.tab.label(),
            self.text
        )
    }
}

/// The app's one error model: the latest error of any tab.
#[derive(Debug, Clone, Default)]
pub struct ErrorLog {
    latest: Option<AppError>,
}

impl ErrorLog {
    /// Records an error (it replaces an older one), its control characters escaped: the text
    /// quotes file names, which can hold escape sequences or bidirectional overrides.
    pub fn report(&mut self, place: Place, text: impl Into<String>) {
        self.latest = Some(AppError {
            place,
            text: crate::text::escape_control(&text.into()),
            at: SystemTime::now(),
        });
    }

    /// The action at `place` succeeded: its error, if it is the latest, is no longer true.
    pub fn succeeded(&mut self, place: Place) {
        if self.latest.as_ref().is_some_and(|e| e.place == place) {
            self.latest = None;
        }
    }

    /// Records `outcome`: an error is reported, a success clears the place's error.
    pub fn record<T>(&mut self, place: Place, outcome: &Result<T, String>) {
        match outcome {
            Ok(_) => self.succeeded(place),
            Err(e) => self.report(place, e.clone()),
        }
    }

    /// The user closed it.
    pub fn dismiss(&mut self) {
        self.latest = None;
    }

    pub fn latest(&self) -> Option<&AppError> {
        self.latest.as_ref()
    }
}

/// An error's text with the OS's wording of the I/O error behind it (found in its source
/// chain) replaced by a sentence: "No such file or directory (os error 2)" becomes "does not
/// exist", "Is a directory (os error 21)" becomes "is a folder, not a file". Control
/// characters (from a file name) are escaped, as the CLI prints them.
pub fn error_sentence(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            let raw = io.to_string();
            let sentence = io_sentence(io);
            text = if text.contains(&raw) {
                text.replace(&raw, &sentence)
            } else {
                format!("{text}: {sentence}")
            };
            break;
        }
        source = e.source();
    }
    crate::text::escape_control(&text)
}

/// An I/O error as the end of a sentence whose subject is the path it concerns.
pub fn io_sentence(e: &std::io::Error) -> String {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::NotFound => "does not exist".into(),
        K::IsADirectory => "is a folder, not a file".into(),
        K::NotADirectory => "is a file, not a folder (or a part of the path is a file)".into(),
        K::PermissionDenied => "cannot be accessed: permission denied".into(),
        K::AlreadyExists => "already exists".into(),
        K::StorageFull => "cannot be written: the disk is full".into(),
        K::ReadOnlyFilesystem => "cannot be written: the disk is read-only".into(),
        K::UnexpectedEof => "ends early (the file is truncated)".into(),
        K::InvalidData => format!("holds data that cannot be read ({})", strip_os_code(e)),
        _ => strip_os_code(e),
    }
}

/// The OS message without its " (os error N)" suffix.
fn strip_os_code(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.rfind(" (os error ") {
        Some(i) if text.ends_with(')') => text[..i].to_string(),
        _ => text,
    }
}

/// Why a path typed into a folder field cannot be opened, in a sentence; None when it is a
/// folder. (Checked on a helper thread: it touches the disk.)
pub fn folder_problem(path: &std::path::Path) -> Option<String> {
    if path.as_os_str().is_empty() {
        return Some("no folder given: type or pick one".into());
    }
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => None,
        Ok(_) => Some(format!("{} is a file, not a folder", path.display())),
        Err(e) => Some(format!("{} {}", path.display(), io_sentence(&e))),
    }
}

/// What a job is doing, as far as the UI knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    /// Sent to the worker, which is busy with an earlier job.
    Queued,
    Running,
    /// Cancel was clicked; the job stops at its next step, layer or image.
    Cancelling,
}

/// One job on the board.
#[derive(Debug, Clone, PartialEq)]
pub struct JobEntry {
    pub id: u64,
    pub tab: Tab,
    /// What it is, as a noun phrase: "calibration run", "sensitivity sweep".
    pub label: String,
    pub state: JobState,
    /// 0..1 while running.
    pub progress: f32,
    /// The worker took it up (a job cancelled while queued is `Cancelling` but not started).
    pub started: bool,
}

/// The worker's jobs in submission order (the order it runs them): the status bar's running
/// job and queue, and each tab's "queued behind …".
#[derive(Debug, Clone, Default)]
pub struct JobBoard {
    jobs: Vec<JobEntry>,
}

impl JobBoard {
    /// A job was sent to the worker: queued until the worker says it started.
    pub fn submit(&mut self, id: u64, tab: Tab, label: impl Into<String>) {
        self.jobs.push(JobEntry {
            id,
            tab,
            label: label.into(),
            state: JobState::Queued,
            progress: 0.0,
            started: false,
        });
    }

    /// The worker started job `id`.
    pub fn started(&mut self, id: u64) {
        if let Some(j) = self.get_mut(id) {
            j.started = true;
            if j.state == JobState::Queued {
                j.state = JobState::Running;
            }
        }
    }

    pub fn progress(&mut self, id: u64, fraction: f32) {
        if let Some(j) = self.get_mut(id) {
            j.progress = fraction.clamp(0.0, 1.0);
        }
    }

    /// Cancel was clicked for job `id`.
    pub fn cancelling(&mut self, id: u64) {
        if let Some(j) = self.get_mut(id) {
            j.state = JobState::Cancelling;
        }
    }

    /// Job `id` ended (done, failed or cancelled).
    pub fn finished(&mut self, id: u64) {
        self.jobs.retain(|j| j.id != id);
    }

    pub fn get(&self, id: u64) -> Option<&JobEntry> {
        self.jobs.iter().find(|j| j.id == id)
    }

    fn get_mut(&mut self, id: u64) -> Option<&mut JobEntry> {
        self.jobs.iter_mut().find(|j| j.id == id)
    }

    /// The job the worker is on (running or being cancelled).
    pub fn current(&self) -> Option<&JobEntry> {
        self.jobs.iter().find(|j| j.started)
    }

    /// Jobs waiting for the worker.
    pub fn queued(&self) -> impl Iterator<Item = &JobEntry> {
        self.jobs.iter().filter(|j| !j.started)
    }

    /// For a queued job: what it waits behind, as a sentence ("queued behind the calibration
    /// run of the Generate tab and 1 more job"); None when it is not queued.
    pub fn waiting_behind(&self, id: u64) -> Option<String> {
        let pos = self.jobs.iter().position(|j| j.id == id)?;
        if self.jobs[pos].started {
            return None;
        }
        let ahead = &self.jobs[..pos];
        let first = ahead.first()?;
        let more = match ahead.len() - 1 {
            0 => String::new(),
            1 => " and 1 more job".into(),
            n => format!(" and {n} more jobs"),
        };
        Some(format!(
            "queued behind the {} of the {} tab{more}; it starts when that ends",
            first.label,
            first.tab.label()
        ))
    }

    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_success_clears_only_the_error_of_its_own_place() {
        let mut log = ErrorLog::default();
        let open = Place::new(Tab::Samples, "open");
        let export = Place::new(Tab::Samples, "export");
        log.report(open, "x does not exist");
        log.succeeded(export);
        assert_eq!(
            log.latest().map(|e| e.text.as_str()),
            Some("x does not exist")
        );
        assert!(
            log.latest()
                .unwrap()
                .headline()
                .starts_with("Samples tab, ")
        );
        log.succeeded(open);
        assert!(log.latest().is_none());
        log.record(export, &Err::<(), _>("disk full".to_string()));
        assert_eq!(log.latest().unwrap().place, export);
        log.dismiss();
        assert!(log.latest().is_none());
    }

    #[test]
    fn os_errors_become_sentences() {
        let dir = tempfile::tempdir().unwrap();
        let err = std::fs::read(dir.path()).unwrap_err();
        #[derive(Debug, thiserror::Error)]
        #[error("{path}: {source}")]
        struct Wrapped {
            path: String,
            source: std::io::Error,
        }
        let w = Wrapped {
            path: "calib".into(),
            source: err,
        };
        assert_eq!(error_sentence(&w), "calib: is a folder, not a file");
        let missing = dir.path().join("nope");
        assert_eq!(
            folder_problem(&missing),
            Some(format!("{} does not exist", missing.display()))
        );
        let file = dir.path().join("f");
        std::fs::write(&file, b"").unwrap();
        assert!(
            folder_problem(&file)
                .unwrap()
                .ends_with("is a file, not a folder")
        );
        assert_eq!(folder_problem(dir.path()), None);
    }

    #[test]
    fn control_characters_from_file_names_are_escaped_in_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a\x1b[2Jb\u{202e}c");
        let err = std::fs::read(&path).unwrap_err();
        #[derive(Debug, thiserror::Error)]
        #[error("{path}: {source}")]
        struct Wrapped {
            path: String,
            source: std::io::Error,
        }
        let text = error_sentence(&Wrapped {
            path: path.display().to_string(),
            source: err,
        });
        assert!(
            text.ends_with("a\\x1b[2Jb\\u{202e}c: does not exist"),
            "{text:?}"
        );
        // A text made elsewhere is escaped when logged.
        let mut log = ErrorLog::default();
        log.report(Place::new(Tab::Samples, "open"), "x\x07y\u{9b}z");
        assert_eq!(log.latest().unwrap().text, "x\\x07y\\u{9b}z");
    }

    #[test]
    fn the_board_says_what_a_queued_job_waits_behind() {
        let mut b = JobBoard::default();
        b.submit(1, Tab::Generate, "calibration run");
        b.submit(2, Tab::Sensitivity, "sensitivity sweep");
        assert_eq!(b.current(), None);
        b.started(1);
        assert_eq!(b.current().map(|j| j.id), Some(1));
        assert_eq!(
            b.waiting_behind(2).as_deref(),
            Some("queued behind the calibration run of the Generate tab; it starts when that ends")
        );
        assert_eq!(b.waiting_behind(1), None);
        // A queued job being cancelled still waits: it is not the one the worker is on.
        b.cancelling(2);
        assert_eq!(b.current().map(|j| j.id), Some(1));
        assert!(b.waiting_behind(2).is_some());
        b.cancelling(1);
        assert_eq!(b.get(1).unwrap().state, JobState::Cancelling);
        b.finished(1);
        b.started(2);
        assert_eq!(b.current().map(|j| j.id), Some(2));
        assert_eq!(b.get(2).unwrap().state, JobState::Cancelling);
        assert_eq!(b.queued().count(), 0);
    }
}
