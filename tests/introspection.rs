//! The committed interface description must equal what the daemon serves.

#[test]
fn committed_interface_xml_matches_the_daemon() {
    let committed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/packaging/dbus-1/interfaces/org.analyticsstack.Stack1.xml"
    ))
    .unwrap();
    let served = analytics_stack::daemon::manager::introspection_xml();
    assert_eq!(committed, served, "regenerate with: analytics-stackd --print-introspection > packaging/dbus-1/interfaces/org.analyticsstack.Stack1.xml");
}
