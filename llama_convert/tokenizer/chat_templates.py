def chat_template(version, instruct):
    return None
