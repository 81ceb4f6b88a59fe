// The product's final-link settings (rpath to libmlx, OpenBLAS first), for the fuzz targets.
include!("../build.rs");
