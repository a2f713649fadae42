//! Plans a tenancy file and prints plan.json (a development aid; `carve plan` is the tool).
fn main() {
    let path = std::env::args()
        .nth(1)
        .expect("usage: plan_file TENANCY.yaml");
    let text = std::fs::read_to_string(&path).expect("read");
    let catalog = carve_model::Catalog::embedded();
    match carve_plan::parse(&text, &catalog) {
        Ok(t) => {
            let p = carve_plan::plan(&t, &catalog);
            println!("{}", serde_json::to_string_pretty(&p).unwrap());
        }
        Err(errs) => {
            for e in errs {
                eprintln!("{path}:{e}");
            }
            std::process::exit(2);
        }
    }
}
