//! The default service catalogue, from the seed (Yantian's "Li Secretary", Hanzhong's 20+
//! service items and six modules) and the brief, in Chinese and English. Prices are defaults in
//! fen; a programme sets its own.

/// One service a provider can offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CatalogueItem {
    /// Stable code, used in orders and provider catalogues.
    pub code: &'static str,
    pub name_zh: &'static str,
    pub name_en: &'static str,
    /// Default price per visit, in fen.
    pub default_price_fen: i64,
    /// Typical duration on site, in minutes.
    pub typical_minutes: u32,
}

const fn item(
    code: &'static str,
    name_zh: &'static str,
    name_en: &'static str,
    default_price_fen: i64,
    typical_minutes: u32,
) -> CatalogueItem {
    CatalogueItem {
        code,
        name_zh,
        name_en,
        default_price_fen,
        typical_minutes,
    }
}

pub const DEFAULT_CATALOGUE: &[CatalogueItem] = &[
    item("daily_care", "生活照料", "Daily-life care", 6000, 60),
    item("housekeeping", "家务家政", "Housekeeping", 5000, 120),
    item("cleaning", "家庭保洁", "Home cleaning", 6000, 120),
    item("meal_delivery", "助餐送餐", "Meal delivery", 1500, 15),
    item("nutrition_meal", "营养餐桌", "Nutrition meals", 2000, 30),
    item("bathing", "助浴", "Bathing assistance", 8000, 60),
    item("haircut", "理发", "Haircut", 2000, 30),
    item("companionship", "陪伴探访", "Companionship visit", 4000, 60),
    item(
        "spiritual_comfort",
        "精神慰藉",
        "Spiritual comfort",
        3000,
        60,
    ),
    item("hospital_escort", "陪同就医", "Hospital escort", 10000, 180),
    item(
        "appointment_booking",
        "预约挂号",
        "Hospital appointment booking",
        500,
        10,
    ),
    item("shopping", "代购", "Shopping", 1500, 60),
    item(
        "elder_supermarket",
        "惠老超市配送",
        "Elder supermarket delivery",
        1000,
        20,
    ),
    item("home_repair", "维修服务", "Home repairs", 5000, 60),
    item(
        "plumbing_electrics",
        "水电维修",
        "Plumbing and electrics",
        6000,
        60,
    ),
    item("health_check", "健康监测", "Health check", 3000, 30),
    item(
        "medication_reminder",
        "用药指导",
        "Medication guidance",
        2000,
        30,
    ),
    item(
        "rehabilitation",
        "康复护理",
        "Rehabilitation care",
        12000,
        60,
    ),
    item("hospice_care", "临终关怀", "Hospice care", 15000, 120),
    item("legal_aid", "法律咨询", "Legal advice", 0, 30),
    item("travel_care", "旅居养老", "Travel care", 20000, 480),
    item("laundry", "洗衣服务", "Laundry", 2000, 30),
];

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn the_default_catalogue_has_at_least_twenty_distinct_bilingual_items() {
        assert!(DEFAULT_CATALOGUE.len() >= 20);
        let codes: HashSet<&str> = DEFAULT_CATALOGUE.iter().map(|item| item.code).collect();
        assert_eq!(codes.len(), DEFAULT_CATALOGUE.len(), "codes are unique");
        for item in DEFAULT_CATALOGUE {
            assert!(!item.name_zh.is_empty() && !item.name_en.is_empty());
            assert!(item.default_price_fen >= 0);
            assert!(item
                .code
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'_'));
        }
    }
}
