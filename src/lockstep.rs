//! Lockstep comparison against the real CPU (filled in below).
pub fn main(_prog: &[String], _max: Option<u64>, _progress: Option<u64>) -> i32 {
    eprintln!("fx86: lockstep is not implemented yet");
    2
}
