//! Sample values of the wire types, for unit tests across the crate.

use super::{
    Author, ChannelKind, Customer, DeliveryStatus, Message, TaskState, TaskView, Transfer,
    TransferMode, TransferTarget,
};

pub fn customer() -> Customer {
    Customer {
        address: "wc_1".into(),
        name: "Dana".into(),
    }
}

/// A task shown to agents, transferred once.
pub fn task_view() -> TaskView {
    TaskView {
        id: "tk_1".into(),
        conversation_id: "cv_1".into(),
        channel: ChannelKind::Webchat,
        customer: customer(),
        preview: "hi".into(),
        created_at: super::now(),
        state: TaskState::Reserved,
        queue: "default".into(),
        priority: 0,
        waiting_since: super::now(),
        transfers: vec![transfer()],
    }
}

pub fn transfer() -> Transfer {
    Transfer {
        from: "alice".into(),
        to: TransferTarget::Queue("billing".into()),
        mode: TransferMode::Cold,
        note: "refund".into(),
        at: super::now(),
    }
}

/// A customer's first message.
pub fn message() -> Message {
    Message {
        id: "m_1".into(),
        conversation_id: "cv_1".into(),
        seq: 1,
        from: Author::Customer,
        agent_id: None,
        text: "hi".into(),
        attachments: vec![],
        created_at: super::now(),
        status: DeliveryStatus::Accepted,
        client_msg_id: None,
    }
}
