//! `turnd probe`: a diagnostic TURN client (being written).
