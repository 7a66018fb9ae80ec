//! Several controllers on etcd: the life of one ([`leadership`]), the
//! ports it holds whatever its role ([`front`]), what it answers as a
//! standby ([`standby`], [`standby_console`]) and whether it may still act
//! as the leader ([`standing`]). The etcd side (election, following the
//! ledger, cluster status) is in [`crate::store::etcd`], with etcd's types.

pub mod follow;
pub mod front;
pub mod leadership;
pub mod standby;
pub mod standby_console;
