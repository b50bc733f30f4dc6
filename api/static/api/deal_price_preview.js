// Live price preview on the deal admin page: rebuilds the "price preview" table (rendered by
// api/admin_deals.py from what is saved) from the form as the operator edits the price fields
// or the offer and add-on rows. Same rules and rounding as api/deal_rules.py.
"use strict";
(function () {
  // `amount` less `percent`%, rounded half up (deal_rules.percent_off).
  function percentOff(amount, percent) {
    return Math.floor((amount * (100 - percent) * 2 + 100) / 200);
  }

  // deal_rules.deal_price
  function dealPrice(fixed, priceModifier, itemPrices, addonPrices, addonsModifier) {
    const sum = (prices) => prices.reduce((total, price) => total + price, 0);
    const base = fixed !== null ? fixed : percentOff(sum(itemPrices), priceModifier);
    const addons = addonPrices.length ? percentOff(sum(addonPrices), addonsModifier) : 0;
    return base + addons;
  }

  if (typeof module !== "undefined") {  // under Node, for tests/test_admin_deals.py
    module.exports = { percentOff, dealPrice };
    return;
  }

  // A whole number from a form box: null when empty, NaN (shown as "?") when not a number.
  function wholeNumber(id) {
    const value = document.getElementById(id).value.trim();
    if (value === "") return null;
    return /^\d+$/.test(value) ? Number(value) : NaN;
  }

  // The offers chosen in an inline's rows, skipping the hidden template row and deleted rows.
  function chosenOffers(prefix, prices) {
    const offers = [];
    for (const select of document.querySelectorAll(`select[name^="${prefix}-"][name$="-offer"]`)) {
      const row = select.name.slice(0, -"offer".length);
      const deleted = document.querySelector(`input[name="${row}DELETE"]`);
      if (row.includes("__prefix__") || !select.value || (deleted && deleted.checked)) continue;
      const label = select.options[select.selectedIndex].text;
      offers.push({ label, price: select.value in prices ? prices[select.value] : NaN });
    }
    return offers;
  }

  // The same rows as admin_deals.price_rows.
  function priceRows(table) {
    const prices = JSON.parse(table.dataset.offerPrices);
    const items = chosenOffers(table.dataset.itemsPrefix, prices);
    const addons = chosenOffers(table.dataset.addonsPrefix, prices);
    const fixed = wholeNumber("id_price");
    const priceModifier = wholeNumber("id_price_modifier") ?? 0;
    const addonsModifier = wholeNumber("id_addons_modifier") ?? 0;
    const pricesOf = (offers) => offers.map((offer) => offer.price);
    const sum = (offers) => pricesOf(offers).reduce((total, price) => total + price, 0);
    const price = (selected) =>
      dealPrice(fixed, priceModifier, pricesOf(items), pricesOf(selected), addonsModifier);
    const base = price([]);
    const rows = [["the offers", sum(items), base]];
    for (const addon of addons) rows.push([`add-on ${addon.label}`, addon.price, price([addon]) - base]);
    if (addons.length) rows.push(["with all add-ons", sum(items) + sum(addons), price(addons)]);
    return rows;
  }

  function render(table) {
    const show = (cell) => (typeof cell !== "number" ? cell : Number.isFinite(cell) ? cell : "?");
    table.tBodies[0].replaceChildren(
      ...priceRows(table).map((cells) => {
        const tr = document.createElement("tr");
        for (const cell of cells) {
          const td = document.createElement("td");
          td.textContent = show(cell);
          tr.append(td);
        }
        return tr;
      })
    );
  }

  document.addEventListener("DOMContentLoaded", () => {
    const table = document.querySelector("table.deal-price-preview");
    // View-only pages have no price boxes: the server's table is all there is.
    if (!table || !document.getElementById("id_price_modifier")) return;
    const update = () => render(table);
    for (const type of ["input", "change", "formset:added", "formset:removed"]) {
      document.addEventListener(type, update);
    }
    update();
  });
})();
