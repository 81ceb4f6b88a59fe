//! MLX arrays ↔ NumPy arrays: the one conversion between the model's arrays and the `.npy`
//! data the calibration files, the latent output and the parity fixtures hold.
//!
//! It lives on the MLX side because `calib` never touches MLX (browsing data must not start
//! the ML runtime); `calib::npy` does the file format, this module only moves the values.

use std::path::{Path, PathBuf};

use mlx_rs::{Array, Dtype};

use crate::calib::npy::{NpyArray, NpyData, NpyError};

/// Why an array could not be converted or written.
#[derive(Debug, thiserror::Error)]
pub enum TensorIoError {
    #[error("reading an array: {0}")]
    Read(String),
    #[error("cannot store dtype {0:?}")]
    UnsupportedDtype(Dtype),
    #[error("shape {0:?} does not fit MLX's 32-bit dimensions")]
    Shape(Vec<usize>),
    #[error(transparent)]
    Npy(#[from] NpyError),
    #[error("MLX error: {0}")]
    Mlx(#[from] mlx_rs::error::Exception),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// An MLX array as a NumPy array, in the dtype it has (float32, float16, bfloat16 — written as
/// float32 on disk — int32, int64), evaluated and in C order.
pub fn to_npy(a: &Array) -> Result<NpyArray, TensorIoError> {
    let shape: Vec<usize> = a.shape().iter().map(|&d| d as usize).collect();
    // A reshape materialises strided views, so the slice is in C order.
    let flat = a.reshape(&[-1])?;
    flat.eval()?;
    let read = |e: mlx_rs::error::AsSliceError| TensorIoError::Read(e.to_string());
    let data = match a.dtype() {
        Dtype::Float32 => NpyData::Float32(flat.try_as_slice::<f32>().map_err(read)?.to_vec()),
        Dtype::Float16 => {
            NpyData::Float16(flat.try_as_slice::<half::f16>().map_err(read)?.to_vec())
        }
        Dtype::Bfloat16 => {
            NpyData::Bfloat16(flat.try_as_slice::<half::bf16>().map_err(read)?.to_vec())
        }
        Dtype::Int32 => NpyData::Int32(flat.try_as_slice::<i32>().map_err(read)?.to_vec()),
        Dtype::Int64 => NpyData::Int64(flat.try_as_slice::<i64>().map_err(read)?.to_vec()),
        other => return Err(TensorIoError::UnsupportedDtype(other)),
    };
    Ok(NpyArray::new(shape, data)?)
}

/// A NumPy array as an MLX array of `dtype`. The values pass through float32, which holds
/// every value of the float16/bfloat16/float32 data calibration files carry.
pub fn from_npy(a: &NpyArray, dtype: Dtype) -> Result<Array, TensorIoError> {
    let shape = a
        .shape
        .iter()
        .map(|&d| i32::try_from(d))
        .collect::<Result<Vec<i32>, _>>()
        .map_err(|_| TensorIoError::Shape(a.shape.clone()))?;
    Ok(Array::from_slice(&a.data.to_f32_vec(), &shape).as_dtype(dtype)?)
}

/// Writes an MLX array as a `.npy` file (in its own dtype), atomically.
pub fn write_npy(path: &Path, a: &Array) -> Result<(), TensorIoError> {
    to_npy(a)?
        .write_npy_file(path)
        .map_err(|source| TensorIoError::Io {
            path: path.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_values_shape_and_dtype() {
        let x = Array::from_slice(&[1.5f32, -2.0, 0.25, 8.0, 3.0, -0.5], &[2, 3]);
        let npy = to_npy(&x).unwrap();
        assert_eq!(npy.shape, vec![2, 3]);
        assert_eq!(
            npy.data,
            NpyData::Float32(vec![1.5, -2.0, 0.25, 8.0, 3.0, -0.5])
        );
        let half = to_npy(&x.as_dtype(Dtype::Float16).unwrap()).unwrap();
        assert!(matches!(half.data, NpyData::Float16(_)));
        let back = from_npy(&npy, Dtype::Float16).unwrap();
        assert_eq!((back.shape(), back.dtype()), (&[2, 3][..], Dtype::Float16));
        assert_eq!(
            to_npy(&back.as_dtype(Dtype::Float32).unwrap()).unwrap(),
            npy
        );
    }

    #[test]
    fn a_transposed_view_is_written_in_c_order() {
        let x = Array::from_slice(&[1i32, 2, 3, 4, 5, 6], &[2, 3]);
        let t = x.transpose().unwrap();
        let npy = to_npy(&t).unwrap();
        assert_eq!(npy.shape, vec![3, 2]);
        assert_eq!(npy.data, NpyData::Int32(vec![1, 4, 2, 5, 3, 6]));
    }

    #[test]
    fn unsupported_dtypes_are_refused_by_name() {
        let x = Array::from_slice(&[1u8, 2], &[2]);
        let err = to_npy(&x).unwrap_err().to_string();
        assert!(err.contains("Uint8"), "{err}");
    }

    #[test]
    fn write_npy_writes_a_file_numpy_layout_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.npy");
        write_npy(&path, &Array::from_slice(&[7i64, 8], &[2])).unwrap();
        let mut f = std::fs::File::open(&path).unwrap();
        let a = crate::calib::npy::read_npy(&mut f, u64::MAX).unwrap();
        assert_eq!(a.data, NpyData::Int64(vec![7, 8]));
    }
}
