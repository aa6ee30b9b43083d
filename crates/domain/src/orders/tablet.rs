//! What the senior's tablet says about an order, in Chinese and in English.

use super::OrderState;

/// The tablet's line for an order now in `state`. `eta` is the promised arrival as local
/// "HH:MM"; `staff` the name of who is coming, if assigned.
pub fn tablet_text(
    state: OrderState,
    service_zh: &str,
    service_en: &str,
    eta: Option<&str>,
    staff: Option<&str>,
) -> (String, String) {
    let en_service = service_en.to_lowercase();
    match state {
        OrderState::Created | OrderState::Offered => (
            format!("已为您安排{service_zh}，正在联系服务人员"),
            format!("Your {en_service} is being arranged"),
        ),
        OrderState::EnRoute => {
            let who_zh = staff.map_or_else(|| "服务人员".to_owned(), |s| format!("服务人员{s}"));
            let who_en = staff.map_or_else(|| "Your helper".to_owned(), |s| s.to_owned());
            let at_zh = eta
                .map(|eta| format!("，预计{eta}到达"))
                .unwrap_or_default();
            let at_en = eta
                .map(|eta| format!(", arriving at {eta}"))
                .unwrap_or_default();
            (
                format!("{service_zh}：{who_zh}已出发{at_zh}"),
                format!("{service_en}: {who_en} is on the way{at_en}"),
            )
        }
        OrderState::Accepted => {
            let who_zh = staff.map_or_else(|| "服务人员".to_owned(), |s| format!("服务人员{s}"));
            let who_en = staff.map_or_else(|| "Your helper".to_owned(), |s| s.to_owned());
            match eta {
                Some(eta) => (
                    format!("{service_zh}：{who_zh}预计{eta}到达"),
                    format!("{service_en}: {who_en} arrives at {eta}"),
                ),
                None => (
                    format!("{service_zh}：{who_zh}已接单"),
                    format!("{service_en}: {who_en} will come"),
                ),
            }
        }
        OrderState::Arrived => (
            format!("{service_zh}：服务人员已到达"),
            format!("{service_en}: arrived"),
        ),
        OrderState::Completed => (format!("{service_zh}已完成"), format!("{service_en}: done")),
        OrderState::CalledBack => (
            format!("请为本次{service_zh}评分（1至5星）"),
            format!("Please rate your {en_service} (1 to 5 stars)"),
        ),
        OrderState::Rated | OrderState::Closed => (
            format!("谢谢您的评价：{service_zh}"),
            format!("Thank you for rating your {en_service}"),
        ),
        OrderState::Cancelled => (
            format!("{service_zh}已取消"),
            format!("{service_en}: cancelled"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tablet_says_who_arrives_when() {
        let (zh, en) = tablet_text(
            OrderState::Accepted,
            "家务家政",
            "Housekeeping",
            Some("14:30"),
            Some("王阿姨"),
        );
        assert_eq!(zh, "家务家政：服务人员王阿姨预计14:30到达");
        assert_eq!(en, "Housekeeping: 王阿姨 arrives at 14:30");
        let (zh, en) = tablet_text(OrderState::Arrived, "家务家政", "Housekeeping", None, None);
        assert_eq!(
            (zh.as_str(), en.as_str()),
            ("家务家政：服务人员已到达", "Housekeeping: arrived")
        );
    }
}
