//! EWS simulator.
