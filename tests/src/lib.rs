//! remora mesh lab
