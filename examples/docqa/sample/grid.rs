//! Grid squares for grouping sightings (from the fieldnotes source).

/// Size of a grid square.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GridSize {
    /// One-kilometre squares (the default).
    OneKm,
    /// Ten-kilometre squares.
    TenKm,
}

/// The grid square (easting, northing index) holding a point given in metres.
pub fn square_of(easting_m: f64, northing_m: f64, size: GridSize) -> (i64, i64) {
    let side = match size {
        GridSize::OneKm => 1_000.0,
        GridSize::TenKm => 10_000.0,
    };
    ((easting_m / side).floor() as i64, (northing_m / side).floor() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_fall_in_their_square() {
        assert_eq!(square_of(1_500.0, 2_999.0, GridSize::OneKm), (1, 2));
        assert_eq!(square_of(1_500.0, 2_999.0, GridSize::TenKm), (0, 0));
    }
}
