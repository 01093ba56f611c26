// English is the source; Simplified Chinese follows the seeds' console
// words where they have them (注册 CA 证书, 注册码, 验证证书, 提交, 取消激活).
const zh = {
  'Username': '用户名', 'Password': '密码', 'Sign in': '登录', 'Sign out': '退出登录',
  'Overview': '概览', 'Server certificates': '服务器证书', 'CA certificates': 'CA 证书',
  'Device certificates': '设备证书', 'Connections': '连接', 'Rejections': '拒绝记录',
  'Audit log': '审计日志', 'Users': '用户', 'Policies': '授权策略',
  'Listeners': '监听器', 'Sessions': '会话', 'Refusals': '拒绝次数', 'Messages in / s': '消息流入 / 秒',
  'Messages out / s': '消息流出 / 秒', 'Messages per second, last 10 minutes': '最近 10 分钟每秒消息数',
  'received': '流入', 'delivered': '流出', 'Certificates expiring within 30 days': '30 天内到期的证书',
  'None.': '无。', 'Protocol': '协议', 'Address': '地址',
  'Bind custom certificate': '绑定自定义证书', 'Certificate chain': '证书链', 'Private key': '私钥',
  'Name': '名称', 'Submit': '提交', 'Cancel': '取消', 'Close': '关闭', 'Confirm': '确认',
  'Unbind': '解绑', 'Disable': '禁用', 'Enable': '启用', 'Default': '默认', 'Enabled': '已启用', 'Disabled': '已禁用',
  'DNS names': 'DNS 名称', 'Not after': '到期时间', 'State': '状态', 'Actions': '操作',
  'Register CA certificate': '注册 CA 证书', 'Registration code': '注册码', 'Copy': '复制', 'Copied': '已复制',
  'CA certificate': 'CA 证书', 'Verification certificate': '验证证书',
  'Serial number': '序列号', 'Common name': 'Common Name', 'Status': '状态', 'Provisioning': '注册方式',
  'Activate': '激活', 'Deactivate': '取消激活', 'Delete': '删除', 'Revoke': '吊销', 'Download': '下载',
  'Basic information': '基础信息', 'Issuer': '颁发者', 'Registered': '注册时间', 'Automatic activation': '自动激活',
  'Register device certificate': '注册设备证书', 'Device certificate': '设备证书', 'Client ID': '客户端 ID',
  'Filter': '筛选', 'Previous': '上一页', 'Next': '下一页', 'All': '全部', 'CA': 'CA', 'OU': 'OU',
  'Kick': '断开', 'Listener': '监听器', 'Peer': '对端地址', 'Certificate': '证书', 'Connected at': '连接时间', 'User': '用户',
  'At': '时间', 'Reason': '原因', 'Actor': '操作者', 'Action': '操作', 'Target': '对象', 'Seq': '序号',
  'Add user': '添加用户', 'Add policy': '添加策略', 'Policy (JSON)': '策略 (JSON)', 'Priority': '优先级',
  'Effect': '效果', 'Topics': '主题', 'Conditions': '条件', 'Created': '创建时间',
  'Run these commands, then choose the two files:': '执行以下命令,然后选择两个文件:',
  'Closing this pop-up discards the code; opening it again issues a new one.': '关闭弹窗会使注册码失效,再次打开会生成新的注册码。',
  'Deactivating this CA disconnects every device that uses its certificates.': '取消激活后,使用该 CA 签发证书的设备连接将被断开。',
  'Revoking is final: the certificate never connects again and its live connections are closed.': '吊销不可撤销:该证书无法再连接,当前连接会被断开。',
  'Disable the default server certificate? Clients without a matching name get the most recently bound certificate.': '禁用默认服务器证书?未匹配名称的客户端将获得最近绑定的证书。',
  'Enable the default server certificate?': '启用默认服务器证书?',
  'Unbind this certificate? New handshakes stop getting it at once.': '解绑该证书?新的握手将立即不再使用它。',
  'Delete this CA certificate and its device-certificate records?': '删除该 CA 证书及其设备证书记录?',
  'Delete?': '确认删除?', 'Close this connection?': '断开该连接?',
  'Read only: your role is viewer.': '只读:您的角色是查看者。', 'Loading…': '加载中…',
  'Device certificates of this CA': '该 CA 的设备证书',
  'Alarms': '告警', 'Severity': '级别', 'Kind': '类型', 'Subject': '对象', 'Since': '开始时间', 'Message': '说明',
  'No active alarms.': '当前没有告警。', 'critical': '严重', 'major': '重要', 'warning': '警告',
  'Done, with warnings': '已完成,但有警告', 'OK': '确定',
  'Certificate revocation list': '证书吊销列表 (CRL)', 'This update': '本次更新', 'Next update': '下次更新',
  'Revoked': '已吊销', 'Stale': '已过期', 'Source': '来源', 'Yes': '是', 'No': '否', 'No CRL.': '没有 CRL。',
  'CRL file': 'CRL 文件', 'Upload CRL': '上传 CRL', 'Via': '中间证书',
};

export function lang() {
  return localStorage.getItem('certmq.lang') === 'zh' ? 'zh' : 'en';
}

export function t(s) {
  return lang() === 'zh' ? (zh[s] ?? s) : s;
}

export function setLang(l) {
  localStorage.setItem('certmq.lang', l);
  document.documentElement.lang = l === 'zh' ? 'zh-CN' : 'en';
}

// Translates the static parts of a page (`data-i18n` holds the English).
export function translate(root = document) {
  for (const el of root.querySelectorAll('[data-i18n]')) el.textContent = t(el.dataset.i18n);
  document.documentElement.lang = lang() === 'zh' ? 'zh-CN' : 'en';
}

// The switch shows the other language's name: "中文" or "English".
export function langSwitch(button, onChange) {
  const label = () => { button.textContent = lang() === 'zh' ? 'English' : '中文'; };
  label();
  button.addEventListener('click', () => { setLang(lang() === 'zh' ? 'en' : 'zh'); label(); onChange(); });
}
