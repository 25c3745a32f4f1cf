//! Faults: crashes at any point and store outages lose nothing acknowledged.
