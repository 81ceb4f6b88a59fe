//! Calibration data.
