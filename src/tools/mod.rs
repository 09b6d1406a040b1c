//! Tools around the pipeline: reading finished runs (`compare`, `report`, both pure), and the
//! benchmarks and the sample inspector (`bench`, `neighbour_bench`, `scale_bench`, `doctor`), which run the
//! engine and retrieval. Nothing in the pipeline imports them.

#[cfg(feature = "native")]
pub mod bench;
pub mod compare;
#[cfg(feature = "native")]
pub mod doctor;
#[cfg(feature = "native")]
pub mod neighbour_bench;
pub mod report;
#[cfg(feature = "native")]
pub mod scale_bench;
