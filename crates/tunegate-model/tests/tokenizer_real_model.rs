//! Tokenizer facts about the real Gemma 3 vocabulary, independent of the
//! fixture.

mod common;

use tunegate_model::tokenizer::TokenType;

#[test]
fn gemma3_vocab_facts() {
    let Some(t) = common::tokenizer() else { return };
    assert_eq!(t.vocab_size(), 262_144);
    assert_eq!(t.bos_id(), Some(2));
    assert_eq!(t.eos_id(), Some(1));
    assert_eq!(t.pad_id(), Some(0));
    assert_eq!(t.unk_id(), Some(3));
    assert!(t.adds_bos());
    assert!(!t.add_space_prefix());
    assert_eq!(t.token_id("<start_of_turn>"), Some(105));
    assert_eq!(t.token_id("<end_of_turn>"), Some(106));
    assert_eq!(t.eot_id(), Some(106));
    assert!(t.is_end_of_generation(1) && t.is_end_of_generation(106));
    let user_defined = (0..t.vocab_size() as u32)
        .filter(|&i| t.token_type(i) == Some(TokenType::UserDefined))
        .count();
    assert_eq!(user_defined, 165);
    for b in 0..=255u8 {
        let id = t.token_id(&format!("<0x{b:02X}>")).expect("byte token");
        assert_eq!(t.token_type(id), Some(TokenType::Byte));
        assert_eq!(t.token_to_piece(id, false), &[b]);
    }
}

#[test]
fn hello_world_and_chat_format() {
    let Some(t) = common::tokenizer() else { return };
    let ids = t.encode("Hello world", true, false);
    assert_eq!(ids[0], 2);
    assert_eq!(ids.len(), 3, "{ids:?}");
    assert_eq!(t.token_text(ids[1]), Some("Hello"));
    assert_eq!(t.token_text(ids[2]), Some("▁world"));
    assert_eq!(t.decode(&ids), "Hello world");

    let chat = "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n";
    let special = t.encode(chat, true, true);
    assert_eq!(&special[..2], &[2, 105]);
    assert!(special.contains(&106));
    // Without special parsing a user cannot forge turn markers.
    let plain = t.encode(chat, true, false);
    assert!(!plain[1..].contains(&105) && !plain.contains(&106));
    assert_eq!(t.decode(&plain), chat);
    assert_eq!(t.decode_with(&special, true), format!("<bos>{chat}"));
    assert_eq!(t.decode(&special), "user\nHi\nmodel\n");
}
